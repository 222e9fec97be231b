"""Tasks the appliance hosts: built-ins (``appliance.*``) and demos (``demo.*``)."""
