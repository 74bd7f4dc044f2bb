# Builds the stampede binary; the image runs any subcommand (default: run).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY topics ./topics
RUN cargo build --release --locked && cp target/release/stampede /usr/local/bin/stampede

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/stampede /usr/local/bin/stampede
USER nobody
EXPOSE 8080 9100
ENTRYPOINT ["stampede"]
CMD ["run"]
