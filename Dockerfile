# The gateway as a container image: a static (musl) binary with its built-in
# policies compiled in, on `scratch`, run as the unprivileged user 10001.
#
#   deploy/image/build.sh                 # builds this with podman, buildah or docker,
#                                         # or the same image without them (see the script)
#   podman run -p 4000:4000 switchyard serve --config /etc/switchyard/switchyard.toml --simulate
#
# Mount your config at /etc/switchyard/switchyard.toml (a ConfigMap), or
# elsewhere and pass --config. The gateway writes its key store, jobs and
# compiled-policy cache under /var/lib/switchyard and /var/cache/switchyard.
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools file \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl wasm32-unknown-unknown
WORKDIR /src
COPY . .
RUN CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked -p switchyard --target x86_64-unknown-linux-musl \
 && deploy/image/rootfs.sh target/x86_64-unknown-linux-musl/release/switchyard /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENV XDG_DATA_HOME=/var/lib XDG_CACHE_HOME=/var/cache HOME=/var/lib/switchyard
USER 10001:10001
EXPOSE 4000
HEALTHCHECK --interval=10s --timeout=6s --start-period=10s CMD ["/switchyard", "healthcheck"]
ENTRYPOINT ["/switchyard"]
CMD ["serve", "--config", "/etc/switchyard/switchyard.toml"]
