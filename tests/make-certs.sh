#!/usr/bin/env bash
# A throwaway CA and a server certificate for localhost/127.0.0.1, for Envoy's HTTPS listener.
# boto3 sends a bearer token (AWS_BEARER_TOKEN_BEDROCK) only over HTTPS.
set -euo pipefail
dir=${1:-.run/tls}
[ -s "$dir/cert.pem" ] && [ -s "$dir/ca.pem" ] && exit 0
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj "/CN=Tollgate dev CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout key.pem -out server.csr -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 825 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
echo "made $dir/{ca.pem,cert.pem,key.pem}"
