#!/usr/bin/env bash
# First install of nginx.conf, before a real certificate exists.
#
#   deploy/bootstrap-tls.sh chat.example.com
#   deploy/bootstrap-tls.sh --cert-dir /etc/ssl/chat --webroot /var/www/acme chat.example.com
#
# nginx refuses to start (and `nginx -t` fails) while the files named by ssl_certificate and
# ssl_certificate_key are missing, and certbot's webroot mode needs nginx running to serve the ACME
# challenge on port 80: without a first certificate, neither can go first. This script makes a
# self-signed placeholder for DOMAIN where nginx.conf expects the real one (fullchain.pem and
# privkey.pem in --cert-dir) and creates the challenge directory under --webroot. Then nginx starts,
# certbot obtains the real certificate, and its deploy hook copies it over the placeholder
# (docs/operations.md, "TLS: the first certificate").
#
# Existing files are never touched: run again, it keeps a real certificate (or an earlier placeholder)
# and exits 0. Exactly one of the two files present means a broken install: it stops with an error.
set -euo pipefail

cert_dir=/etc/ssl/chat
webroot=/var/www/acme
# Days the placeholder is valid: long enough to get the real certificate, short enough that a
# forgotten placeholder shows up in monitoring soon.
days=30

usage() {
  echo "usage: $0 [--cert-dir DIR] [--webroot DIR] DOMAIN" >&2
  exit 2
}

domain=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cert-dir) [ $# -ge 2 ] || usage; cert_dir=$2; shift 2 ;;
    --webroot) [ $# -ge 2 ] || usage; webroot=$2; shift 2 ;;
    -h | --help) usage ;;
    -*) usage ;;
    *) [ -z "$domain" ] || usage; domain=$1; shift ;;
  esac
done
[ -n "$domain" ] || usage
# A host name only: it is written into the certificate's subject, where anything else has no place.
if ! [[ "$domain" =~ ^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$ ]]; then
  echo "not a host name: $domain" >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "openssl is required (apt-get install openssl)" >&2; exit 1; }

# The ACME challenge directory: certbot writes its token files here, nginx serves them on port 80.
install -d -m 0755 "$webroot/.well-known/acme-challenge"
install -d -m 0755 "$cert_dir"

chain="$cert_dir/fullchain.pem"
key="$cert_dir/privkey.pem"
if [ -e "$chain" ] && [ -e "$key" ]; then
  echo "kept: $chain and $key exist"
  exit 0
fi
if [ -e "$chain" ] || [ -e "$key" ]; then
  echo "only one of $chain and $key exists: remove it or put its pair back" >&2
  exit 1
fi

# Made in a private directory beside the targets and moved into place, so nginx never sees a
# half-written pair and the key is never readable by others, not even for a moment.
staging=$(mktemp -d "$cert_dir/.bootstrap.XXXXXX")
trap 'rm -rf "$staging"' EXIT
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
  -subj "/CN=$domain" -addext "subjectAltName=DNS:$domain" \
  -keyout "$staging/privkey.pem" -out "$staging/fullchain.pem" 2>/dev/null
chmod 0600 "$staging/privkey.pem"
chmod 0644 "$staging/fullchain.pem"
mv "$staging/privkey.pem" "$key"
mv "$staging/fullchain.pem" "$chain"
echo "made a self-signed placeholder for $domain, valid $days days: $chain, $key"
echo "next: nginx -t && systemctl reload-or-restart nginx, then certbot (docs/operations.md)"
