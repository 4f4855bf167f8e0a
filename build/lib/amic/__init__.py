"""amic: compile an Amifile into a stage2 artifact and bake machine images from it."""

__version__ = "0.1.0"
