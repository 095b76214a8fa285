"""Data sets: folders, tables, arrays, text files and the bundled samples."""
