"""In-tree plugins. Each registers through the ``sgl.plugins`` entry point group like a third party's would."""
