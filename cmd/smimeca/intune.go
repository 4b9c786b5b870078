package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/uuid"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"go.step.sm/crypto/pemutil"

	"github.com/smimeca/smimeca/internal/httplimit"
	"github.com/smimeca/smimeca/intune"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/scep"
	"google.golang.org/grpc"
)

// intuneFlags are serve's --intune-* flags: smimeca as Intune's third-party
// SCEP CA (on /scep/intune), its revocation feed, and `intune sync`.
type intuneFlags struct {
	tenant, clientID, secretFile, certFile string
	authorityURL, graphURL, resourceURL    string
	revocationInterval                     time.Duration
	// The imported-PFX store: the tenant's PFX connector key and where it
	// keeps its private key; how often to synchronise (0: on request).
	pfxConnectorKey, pfxProvider, pfxKeyName string
	pfxSyncInterval                          time.Duration
	connectorKey                             *rsa.PublicKey // read by config
}

func (i *intuneFlags) register(f *envFlags) {
	f.str(&i.tenant, "intune-tenant", "SMIMECA_INTUNE_TENANT", "", "Entra tenant (ID or contoso.onmicrosoft.com) of the Intune smimeca is the SCEP CA of; turns on /scep/intune and the revocation feed")
	f.str(&i.clientID, "intune-client-id", "SMIMECA_INTUNE_CLIENT_ID", "", "application (client) ID of smimeca's app registration (Intune scep_challenge_provider, Graph Application.Read.All)")
	f.str(&i.secretFile, "intune-client-secret-file", "SMIMECA_INTUNE_CLIENT_SECRET_FILE", "", "file holding the app's client secret")
	f.str(&i.certFile, "intune-client-cert", "SMIMECA_INTUNE_CLIENT_CERT", "", "PEM file with the app's client certificate and its RSA private key (instead of a secret)")
	f.str(&i.authorityURL, "intune-authority-url", "SMIMECA_INTUNE_AUTHORITY_URL", intune.DefaultAuthorityURL, "Entra authority (sovereign clouds)")
	f.str(&i.graphURL, "intune-graph-url", "SMIMECA_INTUNE_GRAPH_URL", intune.DefaultGraphURL, "Microsoft Graph (sovereign clouds)")
	f.str(&i.resourceURL, "intune-resource-url", "SMIMECA_INTUNE_RESOURCE_URL", intune.DefaultResourceURL, "Intune's resource (token audience)")
	f.str(&i.pfxConnectorKey, "intune-pfx-connector-key", "SMIMECA_INTUNE_PFX_CONNECTOR_KEY", "", "PEM public key (or certificate) of the tenant's PFX Certificate Connector: escrowed keys go to Intune's imported-PFX store (smimeca intune sync) with passwords encrypted to it, and to no other key")
	f.str(&i.pfxProvider, "intune-pfx-provider-name", "SMIMECA_INTUNE_PFX_PROVIDER_NAME", intune.DefaultPFXProvider, "key storage provider of the connector's key, as Intune's records name it")
	f.str(&i.pfxKeyName, "intune-pfx-key-name", "SMIMECA_INTUNE_PFX_KEY_NAME", intune.DefaultPFXKeyName, "name of the connector's key, as Intune's records name it")
	f.duration(&i.pfxSyncInterval, "intune-pfx-sync-interval", "SMIMECA_INTUNE_PFX_SYNC_INTERVAL", 0, "synchronise every user's escrow into Intune's imported-PFX store this often (0: only on `smimeca intune sync`)")
	f.duration(&i.revocationInterval, "intune-revocation-interval", "SMIMECA_INTUNE_REVOCATION_INTERVAL", time.Hour, "how often Intune's revocation requests are fetched and carried out (0: never)")
}

// config checks the flags and reads the credential: nil when Intune is off.
func (i *intuneFlags) config() (*intune.Config, error) {
	if i.tenant == "" {
		if i.clientID != "" || i.secretFile != "" || i.certFile != "" {
			return nil, usagef("--intune-client-id, --intune-client-secret-file and --intune-client-cert need --intune-tenant")
		}
		return nil, nil
	}
	if i.clientID == "" {
		return nil, usagef("--intune-tenant needs --intune-client-id (the app registration's application ID)")
	}
	if (i.secretFile == "") == (i.certFile == "") {
		return nil, usagef("give exactly one of --intune-client-secret-file and --intune-client-cert")
	}
	if i.revocationInterval < 0 || i.revocationInterval > 0 && i.revocationInterval < time.Second {
		return nil, usagef("--intune-revocation-interval must be 0 (off) or at least 1s")
	}
	for name, u := range map[string]string{"--intune-authority-url": i.authorityURL, "--intune-graph-url": i.graphURL, "--intune-resource-url": i.resourceURL} {
		if !strings.HasPrefix(u, "https://") {
			return nil, usagef("%s %q must be an https:// URL", name, u)
		}
	}
	cfg := &intune.Config{Tenant: i.tenant, ClientID: i.clientID, AuthorityURL: i.authorityURL, GraphURL: i.graphURL,
		ResourceURL: i.resourceURL, CallerInfo: "smimeca/" + version}
	if i.secretFile != "" {
		s, err := readPassword(i.secretFile, "")
		if err != nil || strings.TrimSpace(s) == "" {
			return nil, usagef("--intune-client-secret-file: %v (it must hold the secret)", err)
		}
		cfg.ClientSecret = strings.TrimSpace(s)
	} else {
		b, err := os.ReadFile(i.certFile)
		if err != nil {
			return nil, usagef("--intune-client-cert: %v", err)
		}
		cfg.ClientCertPEM = b
	}
	if i.pfxConnectorKey != "" {
		key, err := readRSAPublicKey(i.pfxConnectorKey)
		if err != nil {
			return nil, usagef("--intune-pfx-connector-key: %v", err)
		}
		i.connectorKey = key
	} else if i.pfxSyncInterval != 0 {
		return nil, usagef("--intune-pfx-sync-interval needs --intune-pfx-connector-key")
	}
	if i.pfxSyncInterval < 0 || i.pfxSyncInterval > 0 && i.pfxSyncInterval < time.Minute {
		return nil, usagef("--intune-pfx-sync-interval must be 0 (on request) or at least 1m")
	}
	// The credential is parsed now, so that a bad one stops the start.
	if _, err := intune.New(*cfg); err != nil {
		return nil, usagef("%v", err)
	}
	return cfg, nil
}

// intuneHandler is /scep/intune: SCEP whose challenges Intune validates,
// behind a limiter of its own with half the PKIOperation slots, so that a
// slow Intune never holds /scep's.
func (a *app) intuneHandler(client *intune.Client, limits httplimit.Limits, opts ...scep.Option) (http.Handler, error) {
	ra, raKey := a.st.authority.RA()
	h, err := scep.New(a.rules.External(intune.Authority{Client: client, Log: a.log}), ra, raKey, a.scepChain(),
		append(opts, scep.WithPath(scep.IntunePath), a.scepIssuers())...)
	if err != nil {
		return nil, err
	}
	limits.MaxInFlight = max(1, limits.MaxInFlight/2)
	return httplimit.New(h, func(r *http.Request) bool { return r.URL.Query().Get("operation") == "PKIOperation" }, limits), nil
}

// buildIntune makes the Intune client when --intune-tenant is set (it calls
// Intune only when a request needs it).
func (a *app) buildIntune(context.Context) error {
	cfg := a.cfg.resolved.intune
	if cfg == nil {
		return nil
	}
	c, err := intune.New(*cfg)
	if err != nil {
		return err
	}
	a.intune = c
	a.log.Info("Intune: /scep/intune validates challenges with Intune", "tenant", cfg.Tenant, "client_id", cfg.ClientID)
	return nil
}

// startIntuneFeed runs Intune's revocation feed (on one node of several at
// a time) every --intune-revocation-interval.
func (a *app) startIntuneFeed(ctx context.Context) {
	if a.intune == nil || a.cfg.intune.revocationInterval == 0 {
		return
	}
	feed := &intune.Feed{Client: a.intune, Revoker: a.rules.Revocations, Leases: a.store,
		Holder: leaseHolder(), IssuerName: a.st.authority.Intermediate().Subject.String(),
		Interval: a.cfg.intune.revocationInterval, Log: a.log.With("job", "intune-revocation-feed")}
	go feed.Run(ctx)
}

// readRSAPublicKey reads an RSA public key of at least 2048 bits from a PEM
// PUBLIC KEY or CERTIFICATE.
func readRSAPublicKey(path string) (*rsa.PublicKey, error) {
	v, err := pemutil.Read(path)
	if err != nil {
		return nil, err
	}
	if c, ok := v.(*x509.Certificate); ok {
		v = c.PublicKey
	}
	if k, ok := v.(*rsa.PublicKey); ok && k.N.BitLen() >= 2048 {
		return k, nil
	}
	return nil, errors.New("the connector key must be an RSA key of at least 2048 bits, as a PEM PUBLIC KEY or CERTIFICATE")
}

// leaseHolder names this process for the jobs one node of several runs.
func leaseHolder() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d", host, os.Getpid())
}

// pfxSync returns the synchronisation of the escrow into Intune's
// imported-PFX store, nil when it is not configured.
func (a *app) pfxSync() *policy.PFXSync {
	i := a.cfg.intune
	if a.intune == nil || i.connectorKey == nil || a.esc.store == nil {
		return nil
	}
	return policy.NewPFXSync(a.esc.store, intune.PFXStore{Client: a.intune, ConnectorKey: i.connectorKey, ProviderName: i.pfxProvider, KeyName: i.pfxKeyName},
		a.store, a.audit)
}

// startPFXSync synchronises every user every --intune-pfx-sync-interval
// (on one node of several at a time).
func (a *app) startPFXSync(ctx context.Context, sync *policy.PFXSync) {
	every := a.cfg.intune.pfxSyncInterval
	if sync == nil || every == 0 {
		return
	}
	holder := leaseHolder()
	log := a.log.With("job", "intune-pfx-sync")
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if ok, err := a.store.TryLease(ctx, "intune-pfx-sync", holder, every, time.Now()); err == nil && ok {
				actx := policy.WithActor(ctx, policy.Actor{Role: "intune", Name: "continuous intune sync"})
				if r, err := sync.SyncAll(actx, nil); err != nil || r.Failed > 0 {
					log.Warn("intune: imported-PFX sync", "err", err, "failed", r.Failed, "uploaded", r.Uploaded)
				} else if r.Uploaded+r.Deleted > 0 {
					log.Info("intune: imported-PFX sync", "uploaded", r.Uploaded, "deleted", r.Deleted)
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// intuneCmd is `smimeca intune sync`: the server puts escrowed encryption
// certificates into Intune's imported-PFX store.
func intuneCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "sync" {
		return usagef("usage: smimeca intune sync (--user EMAIL | --all) [--quiet]")
	}
	var cf clientFlags
	var user string
	var all, quiet bool
	f := newFlags("intune sync")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "synchronise this user's escrow")
	f.fs.BoolVar(&all, "all", false, "synchronise every user's escrow")
	f.fs.BoolVar(&quiet, "quiet", false, "no progress bar")
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	if (user == "") == !all {
		return usagef("intune sync needs exactly one of --user and --all")
	}
	var report *pb.SyncIntuneReport
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) error {
		stream, err := pb.NewEscrowAdminClient(conn).SyncIntune(ctx, &pb.SyncIntuneRequest{User: user, All: all})
		if err != nil {
			return err
		}
		var bar *progress
		for {
			p, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if bar == nil && p.GetTotal() > 0 {
				bar = newProgress(stderr, int(p.GetTotal()), quiet)
			}
			if p.GetReport() != nil {
				report = p.GetReport()
			} else if bar != nil {
				bar.done("")
			}
		}
		if bar != nil {
			bar.finish()
		}
		return nil
	}); err != nil {
		return err
	}
	if report == nil {
		return &clientError{errors.New("the server ended the sync without a report; see its log")}
	}
	fmt.Fprintf(stdout, "users %d: uploaded %d, already in Intune %d, deleted from Intune %d, failed %d\n",
		report.GetUsers(), report.GetUploaded(), report.GetPresent(), report.GetDeleted(), report.GetFailed())
	for _, e := range report.GetErrors() {
		fmt.Fprintln(stdout, "  failed:", e)
	}
	if report.GetFailed() > 0 {
		return &clientError{fmt.Errorf("%d certificates were not synchronised; run it again (what was done stays done)", report.GetFailed())}
	}
	return nil
}

// checkIntune is doctor's check with the server's --intune-* flags: a
// token, service discovery and a dry validation (a CSR without a
// challenge, which Intune must refuse with a code of its own).
func checkIntune(in *intuneFlags) finding {
	fix := depFixes["intune"]
	cfg, err := in.config()
	if err != nil {
		return finding{name: "intune", detail: err.Error(), fix: "pass doctor the server's --intune-* flags"}
	}
	c, err := intune.New(*cfg)
	if err != nil {
		return finding{name: "intune", detail: err.Error(), fix: fix}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return finding{name: "intune", detail: err.Error()}
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "smimeca doctor"}}, key)
	if err != nil {
		return finding{name: "intune", detail: err.Error()}
	}
	err = c.ValidateRequest(context.Background(), "smimeca-doctor-"+uuid.NewString(), csr)
	var r *intune.Refusal
	switch {
	case errors.As(err, &r):
		return finding{name: "intune", ok: true, detail: "token, discovery and a dry validation work (Intune refused the challenge-less request: " + r.Code + ")"}
	case err == nil:
		return finding{name: "intune", detail: "Intune validated a request without a challenge", fix: "check --intune-graph-url and --intune-resource-url: that is not Intune"}
	}
	return finding{name: "intune", detail: err.Error(), fix: fix}
}
