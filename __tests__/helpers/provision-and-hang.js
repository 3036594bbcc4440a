// A CI job that provisions a lease and then hangs until it is killed (it never releases).
// argv: grpc address, token, pipeline key
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const def = protoLoader.loadSync(path.join(__dirname, '../../proto/buildcloud/v1/buildcloud.proto'), { longs: Number, enums: String, defaults: true });
const { BuildCloud } = grpc.loadPackageDefinition(def).buildcloud.v1;
const [address, token, pipelineKey] = process.argv.slice(2);
const client = new BuildCloud(address, grpc.credentials.createInsecure());
const md = new grpc.Metadata();
md.set('authorization', `Bearer ${token}`);
const req = { pipelineKey, jobId: 'dead', platforms: [], identity: { provider: 'local', project: 'acme/app', branch: 'main', defaultBranch: 'main' } };
client.Provision(req, md, (err, lease) => {
  if (err) {
    console.error(err.message);
    process.exit(1);
  }
  console.log(lease.id);
  setInterval(() => {}, 1000);
});
