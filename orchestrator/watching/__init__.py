"""Inspecting runs: their state (`orch runs`, `orch status`), one run in full (`orch show`), the
progress lines a person watching reads, and the HTML page of `orch report`."""
