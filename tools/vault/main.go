// Command vault builds HashiCorp Vault from the Go module proxy, so that the
// integration and end-to-end tests run against a real Vault server on
// machines that reach no other download source. It is built by
// scripts/vault.sh and cached under ~/.cache/smimeca; it is not part of the
// smimeca binary.
package main

import (
	"os"

	"github.com/hashicorp/vault/command"
)

func main() {
	os.Exit(command.Run(os.Args[1:]))
}
