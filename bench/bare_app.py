"""The baseline: a bare Flask JSON route, served the same way as the API."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/api/health")
def health():
    return jsonify({"status": "ok"})


@app.get("/bare")
def bare():
    return jsonify({"success": True, "data": {"id": 1, "email": "a@example.com"},
                    "message": None, "errors": None, "pagination": None})
