"""What the pages call: training controls, the run catalog, uploads, dataset previews, adaptation tasks."""
