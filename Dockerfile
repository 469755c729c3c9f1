# kpsbot in a container (untested here: no Docker engine on the build machines).
#   docker build -t kpsbot .
#   docker run --env-file .env -v kpsbot-data:/data -p 3000:3000 kpsbot
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 kpsbot && mkdir /data && chown kpsbot /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY kpsbot ./kpsbot
RUN pip install --no-cache-dir .
USER kpsbot
WORKDIR /data
ENV KPSBOT_DB=/data/kpsbot.db PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=4)"
STOPSIGNAL SIGTERM
CMD ["kpsbot", "run"]
