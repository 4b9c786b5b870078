package benchutil

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net/http"
	"time"

	smallscep "github.com/smallstep/scep"
	scepx509 "github.com/smallstep/scep/x509util"
)

// Device is a SCEP client's key and self-signed certificate, as a device
// signs its PKCSReq with before it has a certificate.
type Device struct {
	Key  *rsa.PrivateKey
	Cert *x509.Certificate
}

// NewDevice makes a device with a fresh RSA-2048 key.
func NewDevice() (*Device, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	return &Device{Key: key, Cert: c}, err
}

// PKCSReq builds a PKCSReq message encrypted to recipients whose CSR
// carries challenge, the common name cn and, when given, the e-mail
// addresses emails.
func (d *Device) PKCSReq(recipients []*x509.Certificate, challenge, cn string, emails ...string) ([]byte, error) {
	der, err := scepx509.CreateCertificateRequest(rand.Reader, &scepx509.CertificateRequest{
		CertificateRequest: x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, EmailAddresses: emails},
		ChallengePassword:  challenge,
	}, d.Key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	m, err := smallscep.NewCSRRequest(csr, &smallscep.PKIMessage{
		MessageType: smallscep.PKCSReq, Recipients: recipients, SignerKey: d.Key, SignerCert: d.Cert,
	})
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

// WaitHTTP waits up to 15 s until a GET of url gets any answer.
func WaitHTTP(url string) error {
	for i := 0; i < 300; i++ {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("server did not start: " + url)
}

// GetCACerts fetches a SCEP server's GetCACert (one DER certificate or a
// degenerate PKCS#7 of several).
func GetCACerts(url string) ([]*x509.Certificate, error) {
	resp, err := http.Get(url + "?operation=GetCACert")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.Header.Get("Content-Type") == "application/x-x509-ca-cert" {
		return x509.ParseCertificates(b)
	}
	return smallscep.CACerts(b)
}
