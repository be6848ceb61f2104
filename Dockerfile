# execd container image: built and run from Debian 12 packages only.
#   docker build -t execd . && docker run -p 50051:50051 execd
FROM debian:12 AS build
WORKDIR /src
COPY deploy/install-deps.sh deploy/install-deps.sh
RUN deploy/install-deps.sh
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DEXECD_BUILD_TESTS=OFF \
 && cmake --build build -j"$(nproc)" --target execd execctl

FROM debian:12-slim
COPY deploy/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh
COPY --from=build /src/build/execd /src/build/execctl /usr/local/bin/
RUN useradd --system --no-create-home execd
USER execd
EXPOSE 50051
# tini reaps anything that escapes and forwards SIGTERM, so execd drains on `docker stop`.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/execd"]
# A container is reached on its own interface, which execd refuses to serve without
# authentication; this image carries no certificates or tokens, so --insecure says plainly
# that whoever reaches the published port can run commands. Until the deployment files
# mount TLS files and tokens, pass them as arguments yourself (README: Security): TLS with
# --tls_cert and --tls_key, callers with --auth_tokens_file, probes on --health_listen.
CMD ["--listen=0.0.0.0:50051", "--insecure"]
