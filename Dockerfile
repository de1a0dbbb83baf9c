# jobq: one image for the API, the worker and the one-shot migration.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . \
    && useradd --system --home /app jobq
USER jobq
ENV JOBQ_HOST=0.0.0.0
EXPOSE 8000
ENTRYPOINT ["jobq"]
CMD ["serve"]
