package testkit

import (
	"context"

	"github.com/onsi/gomega"
)

// Tenant creates another namespace, with labels, that shares the fixture's client and emulator
// but has no credentials Secret of its own: for selectors that list through a provider.
func (f *Fixture) Tenant(labels map[string]string) *Fixture {
	ns := Namespace("")
	ns.GenerateName, ns.Labels = "tenant-", labels
	f.g.Expect(f.Client.Create(context.Background(), ns)).WithOffset(1).To(gomega.Succeed())
	t := *f
	t.Namespace = ns.Name
	return &t
}
