# nginx for deploy/compose.yaml: Debian 12's package (nginx 1.22 with Debian's security fixes), the
# version deploy/nginx.conf and its includes are written for, so the containers run the very same files.
FROM debian:bookworm-slim

# Logs go to the container's output, where the log driver keeps and rotates them.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/chat.access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log

COPY deploy/nginx-compose.conf /etc/nginx/nginx.conf
COPY deploy/nginx-chat-http.conf deploy/nginx-chat-servers.conf deploy/nginx-chat-locations.conf /etc/nginx/

EXPOSE 80 443
# Graceful stop: SIGQUIT lets workers finish what they serve (WebSockets at most worker_shutdown_timeout).
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
