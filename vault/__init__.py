"""imagevault: an encrypted image-vault storage daemon for clinical photographs."""

__version__ = "0.1.0"
