package test

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
)

// connectorKey reads the connector key with `smimeca pfx connector-key`.
func connectorKey(t *testing.T, s *server) *rsa.PublicKey {
	t.Helper()
	pemOut := mustOK(t, "pfx connector-key", s.cli("pfx", "connector-key"))
	blk, _ := pem.Decode([]byte(pemOut))
	if blk == nil || blk.Type != "PUBLIC KEY" {
		t.Fatalf("connector-key printed %q", pemOut)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*rsa.PublicKey)
}

// TestIntuneImportWithCLI replays an Intune PFXImport export: the admin
// takes the connector key (`pfx connector-key`), the records are built as
// Intune's PowerShell module builds them with that key, and `pfx import
// --intune` escrows the encryption records — the same entries a PFX import
// of the same files makes — and refuses the signing record by name; a
// re-run changes nothing.
func TestIntuneImportWithCLI(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		v := testvault.Start(t)
		s := escrowServer(t, v)
		is := testpki.NewIssuer(t)
		in := t.TempDir()

		conn := connectorKey(t, s)
		// The admin picks padding schemes the connector key decrypts: all
		// OAEP hashes with files, SHA-1 only with SoftHSM2 2.6.
		hashes := connectorHashes(t, s)
		scheme := func(preferred string) string { return intuneScheme(hashes, preferred) }

		pw := randomPassword(t)
		k1, k2, k3 := testpki.RSAKey(t, 2048, 0), testpki.RSAKey(t, 2048, 1), testpki.RSAKey(t, 2048, 2)
		c1 := is.UserCert(t, k1, testpki.CertOptions{Emails: []string{"alice@example.com"}})
		c2 := is.UserCert(t, k2, testpki.CertOptions{Emails: []string{"alice@example.com"}})
		c3 := is.UserCert(t, k3, testpki.CertOptions{Emails: []string{"alice@example.com"}})
		p1 := is.OpenSSLPFX(t, k1, c1, pw, true)
		p2 := is.PFX(t, pkcs12.Modern2023, k2, c2, pw)
		p3 := is.PFX(t, pkcs12.Modern2023, k3, c3, pw)
		records := filepath.Join(in, "intune-export.json")
		if err := os.WriteFile(records, testpki.IntuneJSON(t,
			testpki.IntuneRecord(t, conn, c1, p1, pw, "alice@example.com", "SmimeEncryption", scheme("OaepSha512")),
			testpki.IntuneRecord(t, conn, c2, p2, pw, "Alice@Example.com", "Unassigned", scheme("OaepSha256")),
			testpki.IntuneRecord(t, conn, c3, p3, pw, "alice@example.com", "SmimeSigning", scheme("OaepSha512")),
		), 0o600); err != nil {
			t.Fatal(err)
		}
		r := s.cli("pfx", "import", "--intune", records)
		if r.code != 1 || !strings.Contains(r.stdout, "imported 2, duplicate (already escrowed) 0, refused 1") ||
			!strings.Contains(r.stdout, "record 3") || !strings.Contains(r.stdout, "smimeSigning") {
			t.Fatalf("intune import: %+v", r)
		}
		if l := s.pfxList(t, "alice@example.com"); len(l.Certificates) != 2 {
			t.Fatalf("escrow after the Intune import: %+v", l)
		}
		// The PFX import of the same file lands on the same entry.
		file, pwFile := writePFX(t, in, "alice-2", p2, pw)
		r = s.cli("pfx", "import", "--user", "alice@example.com", "--password-file", pwFile, file)
		if r.code != 0 || !strings.Contains(r.stdout, "duplicate (already escrowed) 1") {
			t.Fatalf("PFX import of the same file: %+v", r)
		}
		r = s.cli("pfx", "import", "--intune", records)
		if !strings.Contains(r.stdout, "imported 0, duplicate (already escrowed) 2, refused 1") {
			t.Fatalf("re-run: %+v", r)
		}
		// A malformed file is refused before anything is sent, naming the record.
		bad := filepath.Join(in, "bad.json")
		os.WriteFile(bad, []byte(`[{"userPrincipalName":"a@example.com","thumbprint":"00"}]`), 0o600)
		if r := s.cli("pfx", "import", "--intune", bad); r.code != 2 || !strings.Contains(r.stderr, "record 1") || !strings.Contains(r.stderr, "thumbprint") {
			t.Fatalf("malformed file: %+v", r)
		}
		// A record encrypted with a hash the connector key cannot decrypt with
		// is refused, naming those it can.
		if !slices.Contains(hashes, "SHA256") {
			k4 := testpki.RSAKey(t, 2048, 3)
			c4 := is.UserCert(t, k4, testpki.CertOptions{Emails: []string{"alice@example.com"}})
			sha256rec := filepath.Join(in, "sha256.json")
			os.WriteFile(sha256rec, testpki.IntuneJSON(t, testpki.IntuneRecord(t, conn, c4, is.PFX(t, pkcs12.Modern2023, k4, c4, pw), pw, "alice@example.com", "SmimeEncryption", "OaepSha256")), 0o600)
			if r := s.cli("pfx", "import", "--intune", sha256rec); r.code != 1 || !strings.Contains(r.stdout, "it can with: "+strings.Join(hashes, ", ")) {
				t.Errorf("OAEP SHA-256 record to a connector key that cannot: %+v", r)
			}
		}
		if strings.Contains(s.log.String(), pw) {
			t.Error("the PFX password reached the server log")
		}
	})
}

// intuneScheme is the Intune padding scheme an admin picks for a connector
// key that decrypts with hashes: preferred if it can, else OaepSha1.
func intuneScheme(hashes []string, preferred string) string {
	if slices.Contains(hashes, strings.ToUpper(strings.TrimPrefix(preferred, "Oaep"))) {
		return preferred
	}
	return "OaepSha1"
}

// connectorHashes reads the OAEP hashes the connector key decrypts with
// (GetConnectorKey's oaepHashes), with grpcurl.
func connectorHashes(t *testing.T, s *server) []string {
	t.Helper()
	addr := "localhost" + s.grpcAddr[strings.LastIndex(s.grpcAddr, ":"):]
	out := mustOK(t, "GetConnectorKey", s.grpcurl(t, "admin", addr, "smimeca.v1.EscrowAdmin/GetConnectorKey"))
	var resp struct {
		OaepHashes []string `json:"oaepHashes"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil || len(resp.OaepHashes) == 0 {
		t.Fatalf("GetConnectorKey: %s (%v)", out, err)
	}
	want := []string{"SHA256", "SHA384", "SHA512", "SHA1"}
	if s.token != nil {
		want = []string{"SHA1"} // SoftHSM2 2.6's RSA-OAEP
	}
	if !slices.Equal(resp.OaepHashes, want) {
		t.Errorf("the connector key decrypts with %v, want %v", resp.OaepHashes, want)
	}
	return resp.OaepHashes
}
