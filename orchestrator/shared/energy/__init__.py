"""The energy and carbon bill, with the grid's intensity and devices' power figures."""
