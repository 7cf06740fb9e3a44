FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SONICUS_ENV=production
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 10001 sonicus && chown -R sonicus /app \
    && mkdir -p /tmp/sonicus-metrics && chown sonicus /tmp/sonicus-metrics
USER sonicus

EXPOSE 18100
ENV SONICUS_BIND=0.0.0.0:18100
# Settings in gunicorn.conf.py (gthread; path-only access logs).
CMD ["gunicorn", "wsgi:app"]
