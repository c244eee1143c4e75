"""minimascope: which minimum did each optimizer find, and how do these minima differ?"""

__version__ = "0.1.0"
