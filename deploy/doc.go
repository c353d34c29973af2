// Package deploy holds no code: it is the home of the deployment files
// (docker/Dockerfile, docker-compose.yml, systemd/rawlb.service and
// systemd/rawlb.env) and of the tests that keep them honest. The tests build
// the real binaries and check every flag, address and port the files use
// against them, check the Dockerfile against the Makefile's build flags, and
// run `make install` and `make cross` into temporary directories.
package deploy
