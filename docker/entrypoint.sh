#!/bin/sh
# The image's entrypoint (under tini): says in one line why a bind-mounted data dir cannot be
# written, then runs the pipeline as PID 1's only child, so signals reach it.
dir="${PIPELINE_DATA_DIR:-/data}"
case "$dir" in
  *://*) ;;  # an object store: nothing to check here
  *)
    if [ -d "$dir" ] && ! [ -w "$dir" ]; then
      echo "pipeline: the data dir $dir is not writable by uid $(id -u): run the container as its owner, e.g. docker run --user \$(id -u):\$(id -g) ..., or set UID/GID for docker compose (docs/docker.md)" >&2
    fi
    ;;
esac
exec pipeline "$@"
