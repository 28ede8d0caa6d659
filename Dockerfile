# Outpost in a container (docs/production.md#docker):
#   docker build -t outpost .
#   docker run -d --name outpost -p 25:25 -p 465:465 -p 587:587 \
#       -p 127.0.0.1:8025:8025 -v outpost-data:/var/lib/outpost \
#       -v /etc/outpost/outpost.toml:/etc/outpost/outpost.toml:ro outpost
#   docker stop -t 40 outpost   # SIGTERM, then [server] shutdown_grace (30s) to finish

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin outpost

FROM debian:bookworm-slim
# The DNS resolver (hickory-resolver, with its default TLS features) reads the
# system's CA certificates when it is built, and start-up fails without them:
# bookworm-slim has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/outpost --shell /usr/sbin/nologin outpost \
    && install -d -o outpost -g outpost -m 750 /var/lib/outpost
COPY --from=build /src/target/release/outpost /usr/local/bin/outpost
COPY contrib/docker.toml /etc/outpost/outpost.toml
ENV OUTPOST_CONFIG=/etc/outpost/outpost.toml
# Docker lets unprivileged processes bind ports below 1024 inside a container
# (net.ipv4.ip_unprivileged_port_start=0), so Outpost runs as its own user.
USER outpost
WORKDIR /var/lib/outpost
VOLUME /var/lib/outpost
EXPOSE 25 465 587 8025
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/outpost"]
CMD ["serve"]
