"""Published boards: result validation, aggregation over seeds, pages and plots."""
