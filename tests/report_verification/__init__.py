"""How the HTML report is checked in a real browser: headless Chromium driven over the
DevTools protocol (``headless_chromium.py``), by tests/bench/test_report.py and by the command that
takes the committed runs' screenshot."""
