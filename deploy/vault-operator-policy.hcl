# imagevault operator policy for HashiCorp Vault / OpenBao Transit.
#
# For the people (or the CLI: `imagevault keys rotate|retire`) who manage the KEK, in addition
# to vault-policy.hcl. Keep it off the daemon's token unless the daemon itself must run
# /v1/admin/keys/rotate and /v1/admin/keys/retire.
#
#   rotate : POST transit/keys/imagevault-kek/rotate
#   retire : POST transit/keys/imagevault-kek/config   (min_decryption_version,
#                                                      min_encryption_version)
#            POST transit/keys/imagevault-kek/trim     (destroys old versions for good)
#   create : POST transit/keys/imagevault-kek          (first set-up, `create_key = true`)
#
# Not granted: delete, export, backup/restore of the key, and any other key name.
#
#   bao policy write imagevault-operator deploy/vault-operator-policy.hcl

path "transit/keys/imagevault-kek" {
  capabilities = ["create", "read", "update"]
}

path "transit/keys/imagevault-kek/rotate" {
  capabilities = ["update"]
}

path "transit/keys/imagevault-kek/config" {
  capabilities = ["update"]
}

path "transit/keys/imagevault-kek/trim" {
  capabilities = ["update"]
}
