"""Backbones: timm models with pinned weights and explicit preprocessing."""
