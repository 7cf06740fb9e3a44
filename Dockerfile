FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SONICUS_ENV=production
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 10001 sonicus && chown -R sonicus /app
USER sonicus

EXPOSE 18100
# gthread: each WebSocket holds a thread; see the README's figures for the choice.
CMD ["gunicorn", "wsgi:app", "--bind", "0.0.0.0:18100", "--worker-class", "gthread", \
     "--workers", "2", "--threads", "64", "--no-control-socket", "--access-logfile", "-"]
