# Sphinx configuration of the DESC Note, built by `twinkles note RUN_DIR`, which sets
# `twinkles_run_dir`: the figures and numbers come from that run (twinkles.note.sphinx_ext).
project = "The Twinkles Emulated DM Level 2 Pipeline and Results"
author = "the twinkles developers"
copyright = "the twinkles developers"
extensions = ["myst_parser", "twinkles.note.sphinx_ext"]
myst_enable_extensions = ["colon_fence"]
numfig = True
numfig_format = {"figure": "Figure %s", "table": "Table %s"}
root_doc = "index"
exclude_patterns = [".doctrees", "_build"]
html_theme = "alabaster"
html_theme_options = {"nosidebar": True, "page_width": "1000px"}
html_title = project
html_static_path = ["_static"]
html_css_files = ["note.css"]
html_show_sourcelink = False
html_copy_source = False
