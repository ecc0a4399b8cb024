"""An app module whose import raises something other than ImportError."""

raise RuntimeError("raising_import refuses to be imported")
