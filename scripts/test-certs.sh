#!/usr/bin/env bash
# Test certificates for NATS with TLS, made here with openssl: a CA, and one
# server certificate it signs for the given names (localhost and 127.0.0.1
# always), P-256 keys, valid 30 days. For trying deploy/nats/secure.conf and
# for the tests; a real deployment uses its own CA.
#
#   bash scripts/test-certs.sh DIR [name ...]
#
# DIR gets ca.pem, ca-key.pem, server.pem, server-key.pem.
set -euo pipefail
if [[ $# -lt 1 || "$1" == "--help" || "$1" == "-h" ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -ge 1 ]] && exit 0 || exit 2
fi
dir=$1; shift
command -v openssl >/dev/null || { echo "test-certs.sh: openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout ca-key.pem -out ca.pem -subj "/CN=caravan test CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout server-key.pem -out server.csr -subj "/CN=caravan nats" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca-key.pem server-key.pem
echo "test certificates in $dir: ca.pem, server.pem, server-key.pem (for $san)"
