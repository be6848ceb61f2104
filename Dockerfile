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
CMD ["--listen=0.0.0.0:50051"]
