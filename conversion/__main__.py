"""`python -m conversion`: run the conversion stage (see conversion/convert.py)."""

from conversion.convert import main

main()
