"""`python -m appliance` runs the admin CLI."""

from appliance.cli import main

main()
