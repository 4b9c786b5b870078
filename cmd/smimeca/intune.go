package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/smimeca/smimeca/internal/httplimit"
	"github.com/smimeca/smimeca/intune"
	"github.com/smimeca/smimeca/scep"
)

// intuneFlags are serve's --intune-* flags: smimeca as Intune's third-party
// SCEP CA (on /scep/intune), its revocation feed, and `intune sync`.
type intuneFlags struct {
	tenant, clientID, secretFile, certFile string
	authorityURL, graphURL, resourceURL    string
	revocationInterval                     time.Duration
}

func (i *intuneFlags) register(f *envFlags) {
	f.str(&i.tenant, "intune-tenant", "SMIMECA_INTUNE_TENANT", "", "Entra tenant (ID or contoso.onmicrosoft.com) of the Intune smimeca is the SCEP CA of; turns on /scep/intune and the revocation feed")
	f.str(&i.clientID, "intune-client-id", "SMIMECA_INTUNE_CLIENT_ID", "", "application (client) ID of smimeca's app registration (Intune scep_challenge_provider, Graph Application.Read.All)")
	f.str(&i.secretFile, "intune-client-secret-file", "SMIMECA_INTUNE_CLIENT_SECRET_FILE", "", "file holding the app's client secret")
	f.str(&i.certFile, "intune-client-cert", "SMIMECA_INTUNE_CLIENT_CERT", "", "PEM file with the app's client certificate and its RSA private key (instead of a secret)")
	f.str(&i.authorityURL, "intune-authority-url", "SMIMECA_INTUNE_AUTHORITY_URL", intune.DefaultAuthorityURL, "Entra authority (sovereign clouds)")
	f.str(&i.graphURL, "intune-graph-url", "SMIMECA_INTUNE_GRAPH_URL", intune.DefaultGraphURL, "Microsoft Graph (sovereign clouds)")
	f.str(&i.resourceURL, "intune-resource-url", "SMIMECA_INTUNE_RESOURCE_URL", intune.DefaultResourceURL, "Intune's resource (token audience)")
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
		append(opts, scep.WithPath(scep.IntunePath))...)
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
	host, _ := os.Hostname()
	feed := &intune.Feed{Client: a.intune, Revoker: a.rules.Revocations, Leases: a.store,
		Holder: fmt.Sprintf("%s/%d", host, os.Getpid()), IssuerName: a.st.authority.Intermediate().Subject.String(),
		Interval: a.cfg.intune.revocationInterval, Log: a.log.With("job", "intune-revocation-feed")}
	go feed.Run(ctx)
}
