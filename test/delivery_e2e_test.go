package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"howett.net/plist"

	"github.com/smimeca/smimeca/internal/testing/appleschema"
	"github.com/smimeca/smimeca/internal/testing/testvault"
)

const deliverySettings = `hostName: mail.example.com
accountName: Example mail
requireSmime: true
smimeSigningEnabled: true
signingCertificateType: certificate
encryptionCertificateType: certificate
smimeEncryptByDefaultEnabled: true
smimeSigningUserOverrideEnabled: true
easServices: email,calendars,contacts
`

// deliveryEnv is a server with the asset endpoint, erin's three
// generations of escrowed certificates (a message encrypted to each) and
// her device registered with an openssl-made MDM identity.
type deliveryEnv struct {
	s        *server
	w        string
	id       identity
	settings string
	msg      string
	// said is what the last render printed.
	said string
}

func newDeliveryEnv(t *testing.T) *deliveryEnv {
	t.Helper()
	assetAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	return newDeliveryEnvOn(t, escrowServer(t, testvault.Start(t), "--asset-addr", assetAddr, "--outlook-ldap-host", "ldap.example.com:389"))
}

// newDeliveryEnvOn sets erin's escrow and device up on the running s.
func newDeliveryEnvOn(t *testing.T, s *server) *deliveryEnv {
	t.Helper()
	e := &deliveryEnv{s: s, w: t.TempDir(), msg: "payroll, do not forward\n"}
	files, pwFile, _ := corpHistory(t, e.w, "erin@example.com", e.msg)
	mustOK(t, "import", e.s.cli(append([]string{"pfx", "import", "--user", "erin@example.com", "--password-file", pwFile}, files...)...))
	e.id = e.s.registerWithIdentity("erin@example.com", "iphone-9")
	e.settings = filepath.Join(e.w, "settings.yaml")
	os.WriteFile(e.settings, []byte(deliverySettings), 0o600)
	return e
}

// render runs profile render --format with the profile credentials.
func (e *deliveryEnv) render(t *testing.T, format, out string, extra ...string) []byte {
	t.Helper()
	args := append([]string{"profile", "render", "--format", format, "--user", "erin@example.com", "--device", "iphone-9",
		"--settings", e.settings, "--out", out, "--server", e.s.grpcAddr, "--credentials", filepath.Join(e.s.data, "credentials", "profile")}, extra...)
	e.said = mustOK(t, "profile render --format "+format, runEnv(t, e.s.cliEnv(), smimecaBin(t), args...))
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decrypts reports which generations' messages the PEM key file opens.
func (e *deliveryEnv) decrypts(t *testing.T, key string) []int {
	t.Helper()
	var gens []int
	for g := 0; g < 3; g++ {
		r := runCmd(t, execCommand(t.Context(), tool(t, "openssl"), "cms", "-decrypt", "-in", filepath.Join(e.w, fmt.Sprintf("gen%d.p7m", g)), "-inkey", key))
		if r.code == 0 && strings.ReplaceAll(r.stdout, "\r\n", "\n") == e.msg {
			gens = append(gens, g)
		}
	}
	return gens
}

// openEnveloped opens CMS EnvelopedData (DER) with the device's key.
func (e *deliveryEnv) openEnveloped(t *testing.T, der []byte) string {
	t.Helper()
	f := filepath.Join(e.w, "env.der")
	os.WriteFile(f, der, 0o600)
	return opensslIn(t, e.w, "cms", "-decrypt", "-inform", "DER", "-in", f, "-inkey", e.id.key, "-recip", e.id.cert)
}

// pkcs12Key opens a PKCS#12 with its password into a PEM key file.
func (e *deliveryEnv) pkcs12Key(t *testing.T, name string, pfx []byte, password string) string {
	t.Helper()
	os.WriteFile(filepath.Join(e.w, name+".p12"), pfx, 0o600)
	os.WriteFile(filepath.Join(e.w, name+".pw"), []byte(password), 0o600)
	opensslIn(t, e.w, "pkcs12", "-in", name+".p12", "-passin", "file:"+name+".pw", "-nocerts", "-nodes", "-out", name+".key")
	return filepath.Join(e.w, name+".key")
}

// curl fetches url as a device would, with the client certificate cert
// and key ("" for none), trusting the API CA the asset endpoint's
// certificate comes from; it returns the HTTP status (0 when the TLS
// handshake failed) and the body.
func (e *deliveryEnv) curl(t *testing.T, url string, id *identity) (int, []byte) {
	t.Helper()
	out := filepath.Join(e.w, "curl.out")
	os.Remove(out)
	args := []string{"-sS", "-o", out, "-w", "%{http_code}", "--cacert", filepath.Join(e.s.data, "ca", "api_ca.crt"), url}
	if id != nil {
		args = append(args, "--cert", id.cert, "--key", id.key)
	}
	r := run(t, 60*time.Second, tool(t, "curl"), args...)
	code := 0
	fmt.Sscanf(r.stdout, "%d", &code)
	body, _ := os.ReadFile(out)
	return code, body
}

// TestDDMAssetsReachOnlyTheDevice: the profile service renders the
// device's Declarative Device Management declarations (valid against
// Apple's schema, no secret in them); the device — curl with its MDM
// identity — fetches each asset from the asset endpoint, and each is the
// document whose size and SHA-256 the declaration names: the SCEP
// credential's challenge enrols with scepclient, each identity's PKCS#12
// opens with its password into an escrowed key, and together they decrypt
// every generation's message. Another identity of the same MDM CA gets
// 403, no client certificate gets no TLS session, both audited, as is
// every release.
func TestDDMAssetsReachOnlyTheDevice(t *testing.T) {
	t.Parallel()
	e := newDeliveryEnv(t)
	dir, err := appleschema.DeclarativeDir()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := appleschema.LoadDeclarative(dir)
	if err != nil {
		t.Fatal(err)
	}
	raw := e.render(t, "ddm", filepath.Join(e.w, "declarations.json"))
	for _, err := range sc.Validate(raw) {
		t.Error(err)
	}
	var decls []struct {
		Type, Identifier string
		Payload          map[string]any
	}
	if err := json.Unmarshal(raw, &decls); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	var keys []int
	var challenge string
	for _, d := range decls {
		count[d.Type]++
		ref, ok := d.Payload["Reference"].(map[string]any)
		if !ok {
			continue
		}
		url := ref["DataURL"].(string)
		code, doc := e.curl(t, url, &e.id)
		if code != 200 {
			t.Fatalf("the device fetching %s: %d %s", url, code, doc)
		}
		sum := sha256.Sum256(doc)
		if ref["Hash-SHA-256"] != hex.EncodeToString(sum[:]) || ref["Size"] != float64(len(doc)) {
			t.Errorf("%s: the document is not the one declared (hash %v size %v, got %x %d)", url, ref["Hash-SHA-256"], ref["Size"], sum, len(doc))
		}
		// A second fetch is the same document (so the hash holds).
		if _, again := e.curl(t, url, &e.id); string(again) != string(doc) {
			t.Errorf("%s: two fetches differ", url)
		}
		switch d.Type {
		case "com.apple.asset.credential.scep":
			for _, err := range sc.ValidateCredential("com.apple.credential.scep", doc) {
				t.Error(err)
			}
			var c struct{ Challenge string }
			json.Unmarshal(doc, &c)
			challenge = c.Challenge
		case "com.apple.asset.credential.identity":
			for _, err := range sc.ValidateCredential("com.apple.credential.identity", doc) {
				t.Error(err)
			}
			var c struct {
				Password string
				Identity []byte
			}
			json.Unmarshal(doc, &c)
			keys = append(keys, e.decrypts(t, e.pkcs12Key(t, fmt.Sprintf("ddm%d", count[d.Type]), c.Identity, c.Password))...)
			// Another identity of the same MDM CA: 403; no certificate: no
			// TLS session.
			other := e.s.makeIdentity(t.TempDir(), "iphone-9")
			if code, body := e.curl(t, url, &other); code != 403 || strings.Contains(string(body), "Password") {
				t.Errorf("another identity of the MDM CA got %d %s", code, body)
			}
			if code, body := e.curl(t, url, nil); code != 0 || len(body) != 0 {
				t.Errorf("a client without a certificate got %d %s", code, body)
			}
		}
	}
	if count["com.apple.asset.credential.scep"] != 1 || count["com.apple.asset.credential.identity"] != 3 ||
		count["com.apple.configuration.account.exchange"] != 1 || count["com.apple.configuration.security.identity"] != 2 {
		t.Fatalf("declarations %v", count)
	}
	// The CLI names the configurations the MDM's activation must list.
	for _, d := range decls {
		if listed := strings.Contains(e.said, d.Identifier); listed != strings.HasPrefix(d.Type, "com.apple.configuration.") {
			t.Errorf("%s %s: named for activation %v\n%s", d.Type, d.Identifier, listed, e.said)
		}
	}
	sort.Ints(keys)
	if fmt.Sprint(keys) != "[0 1 2]" {
		t.Errorf("the identity assets decrypt generations %v, want each of 0, 1, 2 once", keys)
	}
	if challenge == "" || strings.Contains(string(raw), challenge) {
		t.Fatal("no challenge in the SCEP asset, or it is in the declarations")
	}
	mustOK(t, "enrol with the SCEP asset's challenge", e.s.scepclient(filepath.Join(e.w, "dev"), challenge))

	audit, _ := os.ReadFile(filepath.Join(e.s.data, "audit.log"))
	opensslIn(t, e.w, "x509", "-in", e.id.cert, "-outform", "DER", "-out", "id.der")
	der, _ := os.ReadFile(filepath.Join(e.w, "id.der"))
	s := sha256.Sum256(der)
	recipient := hex.EncodeToString(s[:])
	var releases, refused, renders int
	for _, line := range strings.Split(string(audit), "\n") {
		var ev struct {
			Action    string `json:"action"`
			Result    string `json:"result"`
			Recipient string `json:"recipient_sha256"`
			Detail    string `json:"detail"`
		}
		if json.Unmarshal([]byte(line), &ev) != nil {
			continue
		}
		switch {
		case ev.Action == "key.release" && strings.Contains(ev.Detail, "DDM") && ev.Recipient == recipient:
			releases++
		case ev.Action == "ddm.asset" && ev.Result == "refused" && ev.Recipient != recipient:
			refused++
		case ev.Action == "ddm.render":
			renders++
		}
	}
	if releases != 6 || refused != 3 || renders != 1 {
		t.Errorf("audit: %d DDM releases to the identity (want 6), %d refusals (3), %d renderings (1)", releases, refused, renders)
	}
}

// TestDeliveryChannelsOtherPlatforms: Outlook's app configuration for iOS
// and Android (the server's directory host), the Windows SyncML (node
// paths under ClientCertificateInstall, passwords that only the device's
// key opens, a purged certificate's node deleted) and the Android
// document (envelopes the device key opens), each rendered with the
// profile credentials.
func TestDeliveryChannelsOtherPlatforms(t *testing.T) {
	t.Parallel()
	e := newDeliveryEnv(t)
	ios := e.render(t, "outlook-ios", filepath.Join(e.w, "outlook.plist"))
	var d map[string]any
	if _, err := plist.Unmarshal(ios, &d); err != nil || d["com.microsoft.outlook.Mail.SMIMEEnabled"] != true ||
		d["com.microsoft.outlook.Mail.SMIMEEnabled.LDAPHostName"] != "ldap.example.com:389" || len(d) != 7 {
		t.Errorf("Outlook iOS configuration %v: %v", d, err)
	}
	android := e.render(t, "outlook-android", filepath.Join(e.w, "outlook.json"))
	if !strings.Contains(string(android), `"productId": "app:com.microsoft.office.outlook"`) {
		t.Errorf("Outlook Android configuration: %s", android)
	}

	stale := "smimeca-" + strings.Repeat("0", 40)
	syncml := e.render(t, "windows", filepath.Join(e.w, "pfx.xml"), "--windows-installed", stale+",other-cert")
	var at struct {
		CmdID int `xml:"CmdID"`
		Cmds  []struct {
			XMLName xml.Name
			Target  string `xml:"Item>Target>LocURI"`
			Data    string `xml:"Item>Data"`
		} `xml:",any"`
	}
	if err := xml.Unmarshal(syncml, &at); err != nil {
		t.Fatalf("SyncML: %v", err)
	}
	passwords, blobs, deleted := map[string]string{}, map[string][]byte{}, []string{}
	for _, c := range at.Cmds {
		rest, ok := strings.CutPrefix(c.Target, "./User/Vendor/MSFT/ClientCertificateInstall/PFXCertInstall/")
		if !ok {
			t.Fatalf("node %s", c.Target)
		}
		node, leaf, _ := strings.Cut(rest, "/")
		switch {
		case c.XMLName.Local == "Delete":
			deleted = append(deleted, node)
		case leaf == "PFXCertPassword":
			der, _ := base64.StdEncoding.DecodeString(c.Data)
			passwords[node] = e.openEnveloped(t, der)
		case leaf == "PFXCertBlob":
			blobs[node], _ = base64.StdEncoding.DecodeString(c.Data)
		}
	}
	if fmt.Sprint(deleted) != "["+stale+"]" || len(blobs) != 3 {
		t.Fatalf("SyncML deletes %v and installs %d", deleted, len(blobs))
	}
	var gens []int
	for node, pfx := range blobs {
		gens = append(gens, e.decrypts(t, e.pkcs12Key(t, node, pfx, passwords[node]))...)
	}
	if len(gens) != 3 {
		t.Errorf("the Windows identities decrypt %v, want 3 generations", gens)
	}

	out := e.render(t, "android", filepath.Join(e.w, "android.json"), "--android-grant", "com.microsoft.office.outlook")
	var doc struct {
		SCEP struct {
			EnvelopedChallenge []byte `json:"envelopedChallenge"`
		} `json:"scep"`
		KeyPairs []struct {
			Alias             string `json:"alias"`
			PKCS12            []byte `json:"pkcs12"`
			EnvelopedPassword []byte `json:"envelopedPassword"`
		} `json:"keyPairs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil || len(doc.KeyPairs) != 3 {
		t.Fatalf("Android document: %v %s", err, out)
	}
	gens = nil
	for i, k := range doc.KeyPairs {
		if !strings.HasPrefix(k.Alias, "smime-") {
			t.Errorf("alias %s", k.Alias)
		}
		gens = append(gens, e.decrypts(t, e.pkcs12Key(t, fmt.Sprintf("android%d", i), k.PKCS12, e.openEnveloped(t, k.EnvelopedPassword)))...)
	}
	if len(gens) != 3 {
		t.Errorf("the Android identities decrypt %v, want 3 generations", gens)
	}
	mustOK(t, "enrol with the Android document's challenge", e.s.scepclient(filepath.Join(e.w, "android-dev"), e.openEnveloped(t, doc.SCEP.EnvelopedChallenge)))
}

// TestDDMAcrossNodes: two nodes on one PostgreSQL and one Vault, each with
// its asset endpoint, behind one public URL. The declarations one node
// renders are served byte for byte by the other (the asset secret travels
// with DATA/ca), and a node started with another asset secret, or another
// public URL, refuses to start naming what differs, instead of serving
// assets whose hashes no declaration names.
func TestDDMAcrossNodes(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	addrs := []string{fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	// One public URL for both, as behind a load balancer: the SCEP asset
	// names it.
	front := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	nodes := newNodesWith(t, 2, newPostgres(t), func(i int) []string { return []string{"--asset-addr", addrs[i]} },
		append(vaultFlags(t, v), "--public-url", front)...)
	e := newDeliveryEnvOn(t, nodes[0])
	raw := e.render(t, "ddm", filepath.Join(e.w, "declarations.json"))
	var decls []struct {
		Type    string
		Payload map[string]any
	}
	if err := json.Unmarshal(raw, &decls); err != nil {
		t.Fatal(err)
	}
	fetched := 0
	for _, d := range decls {
		ref, ok := d.Payload["Reference"].(map[string]any)
		if !ok {
			continue
		}
		url := ref["DataURL"].(string)
		if !strings.Contains(url, addrs[0]) {
			t.Fatalf("asset URL %s is not node 1's", url)
		}
		code, doc := e.curl(t, strings.Replace(url, addrs[0], addrs[1], 1), &e.id)
		sum := sha256.Sum256(doc)
		if code != 200 || ref["Hash-SHA-256"] != hex.EncodeToString(sum[:]) {
			t.Errorf("node 2 serving %s: %d, hash %x, declared %v", url, code, sum, ref["Hash-SHA-256"])
		}
		fetched++
	}
	if fetched != 4 {
		t.Fatalf("%d assets fetched from node 2, want 4", fetched)
	}

	// A third node with another secret, then with another public URL.
	for _, tc := range []struct{ name, flag, want string }{{"secret", front, "asset.key"}, {"public URL", "http://elsewhere.example.com", "--public-url"}} {
		flags := slices.Clone(nodes[1].extra[:len(nodes[1].extra)-2])
		flags[slices.Index(flags, front)] = tc.flag
		third := nextNode(t, nodes[0], append(flags, "--asset-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t))))
		if tc.name == "secret" {
			os.WriteFile(filepath.Join(third.data, "ca", "asset.key"), bytes.Repeat([]byte{7}, 32), 0o600)
		}
		args := append([]string{"serve", "--data", third.data, "--http-addr", third.httpAddr, "--grpc-addr", third.grpcAddr, "--ops-addr", third.opsAddr,
			"--allowed-domains", "example.com"}, third.extra...)
		r := runEnv(t, third.env, smimecaBin(t), args...)
		if r.code == 0 || !strings.Contains(r.stderr+r.stdout, tc.want) {
			t.Errorf("a node with another %s: exit %d, %s%s", tc.name, r.code, r.stdout, r.stderr)
		}
	}
}
