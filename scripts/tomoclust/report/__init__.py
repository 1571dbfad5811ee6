"""What the HTML report shows: figures (``plots``) and tables (``tables``).
"""
