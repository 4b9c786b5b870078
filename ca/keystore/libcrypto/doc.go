// Package libcrypto makes RSA private-key operations of key files go
// through the system's OpenSSL (libcrypto), when smimeca is built with the
// libcrypto tag and cgo: OpenSSL's RSA-2048 signature is about four times
// faster than Go's on CPUs with AVX-512 IFMA, and a CA's RA and issuing
// keys sign and decrypt for every enrolment. Without the tag Wrap returns
// the key unchanged.
//
// Only the operations whose results Go can check are taken over: PKCS#1
// v1.5 signatures of a named hash (deterministic: byte-identical to Go's)
// and PKCS#1 v1.5 decryption; PSS, OAEP and session-key decryption stay
// with Go's key. The tests compare every result with Go's.
package libcrypto
