# The pod sandbox image, from kubernetes' own build/pause/linux/pause.c
# (build-node.sh compiles it statically): no registry is reachable here.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
