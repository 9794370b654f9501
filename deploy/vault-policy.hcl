# imagevault daemon policy for HashiCorp Vault / OpenBao Transit.
#
# Grants exactly what the running daemon needs for the Transit key "imagevault-kek" mounted at
# "transit/": wrap, unwrap and rewrap data keys, and read the key's metadata (versions and
# limits, never key material) for the start-up check, /readyz and /v1/admin/keys.
#
# Deliberately NOT granted:
#   * "create" on transit/encrypt/...: with "create", Transit upserts a missing key on encrypt,
#     so a mistyped key name would silently start a brand-new KEK. With "update" only, encrypting
#     to a missing key is refused (403) and imagevault reports "permission denied by KMS".
#   * rotate, config, trim, delete, export, backup: operator actions, see
#     vault-operator-policy.hcl.
#
# If you change the mount or the key name (IMAGEVAULT_VAULT_MOUNT, IMAGEVAULT_VAULT_KEY),
# change the paths below to match.
#
#   bao policy write imagevault deploy/vault-policy.hcl
#   bao token create -policy=imagevault -period=24h      # or an AppRole with this policy

path "transit/encrypt/imagevault-kek" {
  capabilities = ["update"]
}

path "transit/decrypt/imagevault-kek" {
  capabilities = ["update"]
}

path "transit/rewrap/imagevault-kek" {
  capabilities = ["update"]
}

path "transit/keys/imagevault-kek" {
  capabilities = ["read"]
}
