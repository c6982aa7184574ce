#!/bin/sh
# Embed one image file with nothing but curl: POST the file to the model's NAME_bytes ensemble through Triton's
# HTTP/JSON API; the server decodes it exactly as simclr-embed does. Prints Triton's JSON answer, whose
# outputs[0].data is the embedding.
#
#   examples/embed_with_curl.sh photo.jpg [HOST:PORT] [MODEL]    (defaults: localhost:8000 simclr_resnet18_photo_bytes)
set -eu
file=$1
server=${2:-localhost:8000}
model=${3:-simclr_resnet18_photo_bytes}
size=$(wc -c < "$file")
# Triton's binary data extension: the JSON header, then the raw tensor. A BYTES tensor is, per element, its length
# as 4 bytes (little endian) followed by its bytes; Inference-Header-Content-Length says where the JSON ends.
header='{"inputs":[{"name":"image_bytes","shape":[1,1],"datatype":"BYTES","parameters":{"binary_data_size":'$((size + 4))'}}],"outputs":[{"name":"embedding","parameters":{"binary_data":false}}]}'
length=$(printf '\\%03o\\%03o\\%03o\\%03o' $((size & 255)) $((size >> 8 & 255)) $((size >> 16 & 255)) $((size >> 24 & 255)))
{ printf '%s' "$header"; printf "$length"; cat "$file"; } |
    curl --silent --show-error --fail-with-body --request POST "http://$server/v2/models/$model/infer" \
        --header "Inference-Header-Content-Length: ${#header}" --header "Content-Type: application/octet-stream" \
        --data-binary @-
echo
