package testdb

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	tcmysql "github.com/testcontainers/testcontainers-go/modules/mysql"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// Container images used when no DSN is configured.
const (
	postgresImage = "postgres:15-alpine"
	mysqlImage    = "mysql:8.4"
)

// startContainer starts a server of kind with testcontainers-go and returns
// its DSN, or "" and the reason it could not. The container lives until the
// test binary exits (testcontainers' reaper removes it).
func startContainer(kind string) (dsn, why string) {
	if why := dockerUnavailable(); why != "" {
		return "", why
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	switch kind {
	case Postgres:
		ctr, err := tcpostgres.Run(ctx, postgresImage,
			tcpostgres.WithDatabase("test"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
			tcpostgres.BasicWaitStrategies())
		if err != nil {
			return "", fmt.Sprintf("starting a %s container failed: %v", postgresImage, err)
		}
		s, err := ctr.ConnectionString(ctx, "sslmode=disable")
		if err != nil {
			return "", fmt.Sprintf("container address: %v", err)
		}
		return s, ""
	case MySQL:
		ctr, err := tcmysql.Run(ctx, mysqlImage,
			tcmysql.WithDatabase("test"), tcmysql.WithUsername("root"), tcmysql.WithPassword("sqldlm"))
		if err != nil {
			return "", fmt.Sprintf("starting a %s container failed: %v", mysqlImage, err)
		}
		endpoint, err := ctr.PortEndpoint(ctx, "3306/tcp", "")
		if err != nil {
			return "", fmt.Sprintf("container address: %v", err)
		}
		return "mysql://root:sqldlm@" + endpoint + "/test", ""
	}
	return "", "no container image for " + kind
}

// dockerUnavailable answers quickly, without testcontainers (which can block
// or panic without an engine), whether a Docker engine answers a ping. It
// returns "" when one does, or why not.
func dockerUnavailable() string {
	network, address := "unix", "/var/run/docker.sock"
	if host := os.Getenv("DOCKER_HOST"); host != "" {
		u, err := url.Parse(host)
		if err != nil {
			return fmt.Sprintf("DOCKER_HOST %q does not parse", host)
		}
		switch u.Scheme {
		case "unix":
			address = u.Path
		case "tcp":
			network, address = "tcp", u.Host
		default:
			return fmt.Sprintf("DOCKER_HOST scheme %q is not checked here", u.Scheme)
		}
	} else if _, err := os.Stat(address); err != nil {
		for _, alt := range []string{
			filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "docker.sock"),
			filepath.Join(os.Getenv("HOME"), ".docker", "run", "docker.sock"),
		} {
			if _, err := os.Stat(alt); err == nil {
				address = alt
				break
			}
		}
	}
	client := http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, address)
		}},
	}
	resp, err := client.Get("http://docker/_ping")
	if err != nil {
		return "no Docker engine answers at " + network + ":" + address
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("the Docker engine at %s answered %s", address, resp.Status)
	}
	return ""
}
