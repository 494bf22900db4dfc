# The adstream worker image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY models ./models
COPY streams ./streams
COPY infra ./infra
RUN pip install --no-cache-dir -c constraints.txt .
CMD ["adstream", "worker"]
