"""Images and streams: image sources and views, class orders and task splits, downloads, caches."""
