# Sphinx configuration of the webgemma widget example (see README.md).
project = "lighthouse"
html_theme = "alabaster"
# The webgemma site is built into _static/webgemma/ (README.md); Sphinx copies _static/ into the output.
html_static_path = ["_static"]
# The widget on every page, as a module script (path relative to _static/, or an absolute URL).
html_js_files = [("webgemma/widget.mjs", {"type": "module"})]
html_css_files = ["widget-theme.css"]
exclude_patterns = ["_build", "_static"]
