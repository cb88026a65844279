"""Views: concept vectors to stable 2-D maps, decision regions, live view state, replay, report, charts."""
