# Read by the flask command (python-dotenv): `flask sonicus ...` works in the checkout.
FLASK_APP=wsgi
