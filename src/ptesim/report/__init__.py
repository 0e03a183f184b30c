"""Reports: markdown tables and plots."""
