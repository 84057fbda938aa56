"""`python -m shoprank.conversion`: run the conversion stage (see conversion/convert.py)."""

from shoprank.conversion.convert import main

main()
