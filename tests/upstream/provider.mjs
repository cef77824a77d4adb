// The upstream identity provider of Monoskope's login tests: the OpenID
// Certified `oidc-provider` package on a loopback port, with its development
// login and consent forms, accounts from a JSON file and two clients.
//
//   node provider.mjs --port PORT --accounts FILE --secret SECRET [--tamper-audience]
//
// Prints "ready ISSUER" on stdout once listening. --tamper-audience re-signs
// every ID token with another audience, to test that Monoskope rejects it.

import fs from 'node:fs';
import { parseArgs } from 'node:util';

import * as jose from 'jose';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    accounts: { type: 'string' },
    secret: { type: 'string' },
    'tamper-audience': { type: 'boolean', default: false },
  },
});

const port = Number(args.port);
const issuer = `http://127.0.0.1:${port}`;
// Each account: { "name": ..., "email_verified": true, "groups": [...] }, keyed by e-mail.
const accounts = JSON.parse(fs.readFileSync(args.accounts, 'utf8'));

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: 'upstream-1', alg: 'RS256', use: 'sig' };

const client = (clientId, secret) => ({
  client_id: clientId,
  client_secret: secret,
  // Native clients may use any loopback port (RFC 8252 section 7.3).
  application_type: 'native',
  redirect_uris: ['http://127.0.0.1/callback'],
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
});

const provider = new Provider(issuer, {
  clients: [client('monoskope', args.secret), client('other', 'other-secret')],
  jwks: { keys: [signingJwk] },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  // Put email, email_verified and groups into the ID token itself.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  ttl: { AuthorizationCode: 60, IdToken: 300, AccessToken: 300, Interaction: 600, Session: 600, Grant: 600 },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, email: id, ...account }) };
  },
});

if (args['tamper-audience']) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/token' && ctx.body && ctx.body.id_token) {
      const claims = jose.decodeJwt(ctx.body.id_token);
      ctx.body.id_token = await new jose.SignJWT({ ...claims, aud: 'someone-else' })
        .setProtectedHeader({ alg: 'RS256', kid: signingJwk.kid })
        .sign(privateKey);
    }
  });
}

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
