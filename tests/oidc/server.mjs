// A real OpenID provider for tests/e2e_oidc.rs: oidc-provider (OpenID Certified) issuing RFC 9068
// JWT access tokens by client credentials, for the resource https://api.test (resource indicators).
// Usage: node server.mjs PORT KID; the client secret comes from MESHWARD_E2E_CLIENT_SECRET.
// Each start signs with a fresh ES256 key named KID, so a restart with another KID is a key
// rotation: the new key published, the old one withdrawn. Listens on 127.0.0.1 only.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const [port, kid] = process.argv.slice(2);
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const key = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: 'meshward-e2e',
    client_secret: process.env.MESHWARD_E2E_CLIENT_SECRET,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    scope: 'read',
    // The provider holds one ES256 key (the default would be RS256).
    id_token_signed_response_alg: 'ES256',
  }],
  jwks: { keys: [key] },
  scopes: ['read'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://api.test',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'read',
        audience: 'https://api.test',
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});

const server = provider.listen(Number(port), '127.0.0.1', () => console.log(`ready ${port} ${kid}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
